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

$ImagingAction = 'check_state'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Observe under the lock: run right after the instrument's lock is taken, it compares what the host shows
    # now with what the plan was made from (the VM's existence, power state and SCSI 0 disks) and stops the
    # operation before it changes anything when another operation changed the VM in between.
    $Vm = 'NDXZOOM'
    $ExpectExists = $true
    $ExpectPower = 'Running'
    $ExpectDisks = [ordered]@{'0' = 'E:\Imaging\instruments\NDXZOOM\NDXZOOM-os-2026C3.0-0a1b2c3d.vhdx'; '3' = 'E:\Imaging\instruments\NDXZOOM\NDXZOOM-var.vhdx'}
    $found = Get-VM -Name $Vm -ErrorAction SilentlyContinue
    $power = if ($null -eq $found) { 'Absent' } else { [string]$found.State }
    $now = @{}
    if ($null -ne $found) {
        Get-VMHardDiskDrive -VM $found |
            Where-Object { [string]$_.ControllerType -eq 'SCSI' -and $_.ControllerNumber -eq 0 } |
            ForEach-Object { $now[[string]$_.ControllerLocation] = [string]$_.Path }
    }
    $changes = New-Object System.Collections.Generic.List[string]
    if (($null -ne $found) -ne $ExpectExists) { $changes.Add("the VM exists: $($null -ne $found), planned on $ExpectExists") }
    if ($power -ne $ExpectPower) { $changes.Add("power is $power, planned on $ExpectPower") }
    foreach ($slot in @($ExpectDisks.Keys) + @($now.Keys) | Sort-Object -Unique) {
        $want = $ExpectDisks[$slot]
        $have = $now[$slot]
        if ($want -ne $have) { $changes.Add("SCSI 0:$slot holds $(if ($have) { $have } else { 'nothing' }), planned on $(if ($want) { $want } else { 'nothing' })") }
    }
    if ($changes.Count -gt 0) {
        throw ("$Vm changed since this plan was made (another operation ran meanwhile): " + ($changes -join '; ') +
               '; nothing was changed: look at `invoke status` and plan again')
    }
    $Result['power'] = $power
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
