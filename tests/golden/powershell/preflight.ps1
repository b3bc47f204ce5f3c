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

$ImagingAction = 'preflight'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Checks the host can take the operation: Hyper-V running, the images staged and intact, room for new
    # disks. It changes nothing. Staged images are read-only once verified, so a writable or absent file is
    # missing; one whose size or time differs from its integrity marker is hashed again, and a wrong hash
    # makes it missing too (`invoke stage` then says what to do).
    $Vm = 'NDXZOOM'
    $Artifacts = @([ordered]@{'name' = 'win11-ltsc-2026C3'; 'sha256' = '3f1c0c2a9d5e4b7f8a6c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a'; 'path' = 'D:\Imaging\images\win11-ltsc-2026C3-3f1c0c2a9d5e.vhdx'}, [ordered]@{'name' = 'apps-2026C3.0'; 'sha256' = '9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b'; 'path' = 'D:\Imaging\images\apps-2026C3.0-9b8a7c6d5e4f.vhdx'})
    $NeedBytes = [long]21474836480
    $problems = New-Object System.Collections.Generic.List[string]
    $service = Get-Service -Name vmms -ErrorAction SilentlyContinue
    if ($null -eq $service -or $service.Status -ne 'Running') { $problems.Add('the Hyper-V service (vmms) is not running') }
    $hasModule = $null -ne (Get-Command -Name Get-VM -ErrorAction SilentlyContinue)
    if (-not $hasModule) { $problems.Add('the Hyper-V PowerShell module is not installed') }
    $vmExists = $false
    if ($hasModule) { $vmExists = $null -ne (Get-VM -Name $Vm -ErrorAction SilentlyContinue) }
    $missing = New-Object System.Collections.Generic.List[string]
    foreach ($artifact in $Artifacts) {
        $item = Get-Item -LiteralPath $artifact['path'] -ErrorAction SilentlyContinue
        if ($null -eq $item -or -not $item.IsReadOnly) { $missing.Add([string]$artifact['name']); continue }
        $marker = [string]$artifact['path'] + '.verified'
        $intact = $false
        if (Test-Path -LiteralPath $marker -PathType Leaf) {
            $mark = Get-Content -LiteralPath $marker -Raw | ConvertFrom-Json
            $intact = ($mark.sha256 -eq $artifact['sha256'] -and [long]$mark.length -eq $item.Length -and [long]$mark.ticks -eq $item.LastWriteTimeUtc.Ticks)
        }
        if (-not $intact) { $intact = ((Get-ImagingSha256 -Path $item.FullName) -eq $artifact['sha256']) }
        if (-not $intact) { $missing.Add([string]$artifact['name'] + ' (damaged: its sha256 changed)') }
    }
    $freeBytes = $null
    if (@($Artifacts).Count -gt 0) {
        $root = [System.IO.Path]::GetPathRoot([string]@($Artifacts)[0]['path'])
        $freeBytes = (New-Object System.IO.DriveInfo -ArgumentList $root).AvailableFreeSpace
        if ($freeBytes -lt $NeedBytes) { $problems.Add("only $freeBytes bytes free on $root, need $NeedBytes") }
    }
    $Result['host_ok'] = ($problems.Count -eq 0)
    $Result['vm_exists'] = $vmExists
    $Result['free_bytes'] = $freeBytes
    $Result['missing'] = @($missing.ToArray())
    $Result['problems'] = @($problems.ToArray())
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
