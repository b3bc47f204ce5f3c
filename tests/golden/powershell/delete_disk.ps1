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

$ImagingAction = 'delete_disk'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Deletes a throw-away disk. Var and data disks are never deleted; a disk that is attached to any VM,
    # mounted on the host or read-only (an image other disks may depend on) is refused.
    $Path = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-os-6.vhdx'
    $Role = 'os'
    if (@('var', 'data') -contains $Role) { throw "refusing to delete $Path: $Role disks are persistent and never deleted" }
    # A creation the process died in leaves "$Path.partial" (create_disk builds under that name): it goes too.
    if (Test-Path -LiteralPath "$Path.partial") {
        Remove-Item -LiteralPath "$Path.partial" -Force -Recurse
        $Result['changed'] = $true
    }
    $item = Get-Item -LiteralPath $Path -ErrorAction SilentlyContinue
    if ($null -ne $item) {
        if ($item.IsReadOnly) { throw "refusing to delete $Path: it is read-only, so it is an image other disks may use as parent" }
        $users = @(Get-VM | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
        if ($users.Count -gt 0) { throw "refusing to delete $Path: it is attached to VM $($users[0].VMName)" }
        if ((Get-VHD -Path $Path).Attached) { throw "refusing to delete $Path: it is mounted on this host" }
        Remove-Item -LiteralPath $Path -Force
        $Result['changed'] = $true
    }
    $Result['path'] = $Path
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
