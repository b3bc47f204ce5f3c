# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'remove_image'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Removes a staged, read-only image that retention pruned. Refused while any VM holds it or any disk
    # under the storage root is a differencing child of it, and refused if the file is not the content
    # retention decided about (another sha256 under that name is left alone).
    $Path = 'D:\Imaging\images\apps-2025C5.0-0123456789ab.vhdx'
    $Sha256 = '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'
    if (Test-Path -LiteralPath $Path -PathType Leaf) {
        $held = @(Get-VM | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
        if ($held.Count -gt 0) { throw "$Path is attached to $($held[0].VMName); refusing to remove it" }
        $Root = Split-Path -Path (Split-Path -Path $Path -Parent) -Parent
        foreach ($disk in Get-ChildItem -LiteralPath $Root -Recurse -Filter '*.vhdx' -File) {
            if ($disk.FullName -eq $Path) { continue }
            $info = Get-VHD -Path $disk.FullName
            if ($info.ParentPath -eq $Path) { throw "$($disk.FullName) is a child of $Path; refusing to remove it" }
        }
        $actual = Get-ImagingSha256 -Path $Path
        if ($actual -ne $Sha256) { throw "$Path has sha256 $actual, not $Sha256; refusing to remove it" }
        Set-ItemProperty -LiteralPath $Path -Name IsReadOnly -Value $false
        Remove-Item -LiteralPath $Path -Force
        Remove-Item -LiteralPath ($Path + '.verified') -Force -ErrorAction SilentlyContinue
        $Result['changed'] = $true
    }
    $Result['path'] = $Path
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
